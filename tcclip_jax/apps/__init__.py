"""Using a trained model on one's own videos: the `Predictor` and checkpoint loading, video
collections, timelines of long videos, and text-to-video retrieval."""
