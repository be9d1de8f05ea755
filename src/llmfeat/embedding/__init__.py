"""Text to vectors: the text encoder, the Spark embed stage and the point-in-time user state it computes,
reading the embedding tables without Spark, encoder fine-tuning, and the collaborative adapter (adapted vectors)."""
