import math

import pytest
import torch

from grasprune.errors import UserError
from grasprune.evaluation.perplexity import perplexity

from conftest import tiny_model


class FixedTokenizer:
    """Stands in for a tokenizer: the evaluation tokens are passed directly."""


def test_perplexity_matches_a_hand_computed_value():
    model = tiny_model("llama")
    tokens = torch.randint(0, 256, (3 * 16 + 5,), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, FixedTokenizer(), "hand", seqlen=16, tokens=tokens)
    # by hand: 3 windows (remainder of 5 dropped), 15 predictions each, log-softmax of the true next token
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(3):
            window = tokens[w * 16 : (w + 1) * 16]
            logits = model(window[None]).logits[0]
            for t in range(15):
                total -= torch.log_softmax(logits[t].double(), -1)[window[t + 1]].item()
                count += 1
    assert (result.windows, result.tokens, result.seqlen) == (3, 45, 16)
    assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)


def test_max_windows_limits_the_windows_scored():
    model = tiny_model("llama")
    tokens = torch.randint(0, 256, (100,))
    assert perplexity(model, FixedTokenizer(), "hand", seqlen=10, max_windows=4, tokens=tokens).windows == 4


def test_wikitext2_uses_the_test_split_with_one_bos(smol_tokenizer):
    from grasprune.evaluation.perplexity import evaluation_tokens

    tokens = evaluation_tokens("wikitext2", smol_tokenizer)
    text = smol_tokenizer.decode(tokens[:40])
    assert "Robert Boulter" in text  # first article of the WikiText-2 test split
    assert tokens.numel() > 250_000


def test_bad_evaluation_settings_are_clear_errors():
    model = tiny_model("llama")
    with pytest.raises(UserError, match="fewer than one window"):
        perplexity(model, FixedTokenizer(), "hand", seqlen=64, tokens=torch.arange(10))
    with pytest.raises(UserError, match="seqlen"):
        perplexity(model, FixedTokenizer(), "hand", seqlen=1, tokens=torch.arange(10))


def test_generation_defaults_never_repeat_a_3gram_and_seeded_sampling_repeats_itself(tiny_model_dir):
    from grasprune.evaluation.generation import Sampling, generate_text
    from grasprune.method.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir))
    text = generate_text(model, tokenizer, "The capital of France is", 40)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    assert len(grams) == len(set(grams))  # a random tiny model loops at once under plain greedy decoding
    plain = generate_text(model, tokenizer, "The capital of France is", 40, Sampling(repetition_penalty=1.0,
                                                                                   no_repeat_ngram=0))
    plain_ids = tokenizer(plain, add_special_tokens=False).input_ids
    assert len({tuple(plain_ids[i:i + 3]) for i in range(len(plain_ids) - 2)}) < len(plain_ids) - 2
    sampled = Sampling(temperature=0.8, top_p=0.9, seed=3)
    assert generate_text(model, tokenizer, "Hello", 12, sampled) == generate_text(model, tokenizer, "Hello", 12, sampled)
    with pytest.raises(UserError, match="generation settings out of range"):
        generate_text(model, tokenizer, "Hello", 4, Sampling(top_p=0.0))
