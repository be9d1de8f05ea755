"""Click-through-rate models: the train stage, model inputs, the torch models and their training loop, warm start,
the CTR metrics and report, online scoring (``Scorer``) and the CTR comparison with adapted vectors."""
