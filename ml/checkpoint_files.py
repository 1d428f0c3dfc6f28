"""The names of a trial's checkpoint files, in a module free of torch: the queue and the artifact
store name them without loading the trainer."""

LAST = "last.pt"  # everything needed to continue: weights, optimiser, schedule, RNG, history
BEST = "best.pt"  # the weights of the best validation epoch (what a model serves)
