"""A model with SmolLM2-135M's config and tokenizer and seeded random weights (the device check's;
the real weights do not fit the device carry). Usage: random_model.py CARRY/smol OUT [LAYERS]."""

import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

source, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
config = AutoConfig.from_pretrained(source)
if len(sys.argv) > 3:  # a dry run on the CPU: fewer layers
    config.num_hidden_layers = int(sys.argv[3])
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.generation_config = GenerationConfig.from_pretrained(source)
model.save_pretrained(out)
AutoTokenizer.from_pretrained(source).save_pretrained(out)
print("saved", out, sum(p.numel() for p in model.parameters()), "parameters")
