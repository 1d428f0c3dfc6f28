"""The worker: claim a trial, train it with `ml.train.run_trial` under a lease, write it back."""
