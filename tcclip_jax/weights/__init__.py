"""Reading and writing model weights in other frameworks' formats."""
