"""Every benchmark command (`python -m harness bench ...`). Nothing in the product imports this package.

    generation.py   bench generation: tokens/s sequential vs batched, llama.cpp batched vs transformers, load times
    app.py          bench app: the demo as a user meets it (page up, first token, Compare, llama.cpp vs its own speed)
    llamacpp.py     bench llamacpp: one chat stream, llama.cpp in process vs transformers; grammar cost
    rules.py        bench rules: the poem rules' measurement (docs/notes/poem_rules.md)
"""
