"""Stage A: the audio fusion model and its training."""
