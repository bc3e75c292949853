"""The embedded offline world: a synthetic instruction task with a ground-truth oracle,
a word-level tokenizer, a tiny Llama, an SFT bootstrap and a preference pool with planted
defects — everything `prefcurate demo` needs without a model or dataset hub."""
