"""The retrieved arm: candidates from a kNN service, a local faiss index or caption substrings, then download."""
