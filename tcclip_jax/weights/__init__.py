"""Weights in and out: foreign formats read into our parameter tree by a rename-and-transpose
table (`pytorch`: OpenAI CLIP and released TC-CLIP / ViFi-CLIP state dicts; `hf`: Hugging Face
CLIP directories, both ways), and the self-describing checkpoint directory (`checkpoint`) that
every tool reads and writes."""
