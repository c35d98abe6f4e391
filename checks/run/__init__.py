"""Real training steps and runs: a few optimizer steps of a recipe's model, on CPU (a tiny random model)
or on a CUDA GPU (the recipe's full-size architecture with random weights), measured as they run.
"""
