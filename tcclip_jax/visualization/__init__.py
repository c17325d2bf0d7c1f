"""Explanations of a TC-CLIP model (`explain`: arrays) and their pictures (`render`)."""
