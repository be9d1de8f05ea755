"""Nearest-neighbour retrieval: building and publishing FAISS indexes, the low-level FAISS operations, filtered
search planning, the ``Retriever``, the HTTP service and its authentication, and the offline retrieval evaluation."""
