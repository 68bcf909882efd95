"""Model providers behind the `call_model` activity."""
