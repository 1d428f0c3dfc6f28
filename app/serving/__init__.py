"""Serving: the active model, hot reload, safe image decoding, batched inference, export."""
