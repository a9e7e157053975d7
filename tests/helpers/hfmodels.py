"""Hugging Face `transformers` models as a user brings them: built from a config (no weights
downloaded), returned as they are, so their ModelOutput reaches the job (docs/usage.md, "What a
model returns"). `--model hfmodels:NAME` with tests/helpers on PYTHONPATH."""


def gpt2(input_shape, n_classes, n_layer=2, n_head=2, n_embd=32):
    """A causal language model over token ids: lines of T tokens, one vocabulary in and out."""
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=n_classes, n_positions=input_shape[0],
                                      n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                      use_cache=False, bos_token_id=0,
                                      eos_token_id=0))


def resnet(input_shape, n_classes, width=8):
    """An image classifier with BatchNorm, for [channels, height, width] lines."""
    from transformers import ResNetConfig, ResNetForImageClassification
    return ResNetForImageClassification(ResNetConfig(
        num_channels=input_shape[0], embedding_size=width, hidden_sizes=[width, 2 * width],
        depths=[1, 1], layer_type="basic", num_labels=n_classes))
