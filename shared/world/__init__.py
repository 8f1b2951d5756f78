"""The embedded audio-visual world: scenes, sounds, questions and its small pretrained models."""
