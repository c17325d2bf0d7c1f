"""The tokenizer must reproduce OpenAI's ids exactly: the golden prompts and the reference code."""

import importlib.metadata
import importlib.util
import json
import pathlib
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcclip_jax.models.tokenizer import (
    Tokenizer,
    get_tokenizer,
    normalize_classname,
    tokenize_prompts,
)

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "tcclip_small.npz"

TRICKY = [
    "",
    "   ",
    "a photo of a cat.",
    "Hello, World!!! ... ?!",
    "fish &amp; chips",
    "&amp;amp; double escaped &lt;b&gt;",
    "<p>&amp;amp; ftfy leaves entities next to markup</p>",
    "\u201ccurly quotes\u201d and \u2018single\u2019",
    "cafÃ© mojibake: Ã¼ber",
    "café naïve façade ÅNGSTRÖM",
    "İstanbul ß ﬁsh",
    "emoji 😀👍🏽 👨‍👩‍👧 ❤️",
    "日本語のテキスト 中文 한국어",
    "Ελληνικά кириллица العربية",
    "3.14159 1,000,000 2024-05-01 ١٢٣",
    "don't I'm we'll they've it's she'd you're DON'T",
    "it'\u017f",  # Long s case-folds to s: only the pattern's IGNORECASE makes `'\u017f` one piece.
    "multiple   spaces\n\nnew lines\t\ttabs\r\n end ",
    "<|startoftext|> literal <|endoftext|>",
    "zero\u200bwidth\u00a0nbsp",
    "ApplyEyeMakeup",
    "YoYo",
    "climb_stairs",
    "brush_hair",
    "Apply Eye Makeup",
    "Yo Yo",
    "climb stairs",
    "a photo of a Playing Daf.",
    "a photo of a sword exercise.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]

NAMES = ["ApplyEyeMakeup", "YoYo", "climb_stairs", "PlayingDaf", "brush_hair", "PommelHorse"]


@pytest.fixture(scope="module")
def openai_tokenizer():
    """OpenAI's `SimpleTokenizer` by path; `import clip` fails (pkg_resources, torchvision)."""
    try:
        dist = importlib.metadata.distribution("openai-clip")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("openai-clip is not installed")
    path = dist.locate_file("clip/simple_tokenizer.py")
    spec = importlib.util.spec_from_file_location("openai_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def openai_tokenize(reference, texts, context_length=77, truncate=False):
    """`clip.tokenize` from openai/CLIP's clip/clip.py, with numpy for torch."""
    if isinstance(texts, str):
        texts = [texts]
    sot = reference.encoder["<|startoftext|>"]
    eot = reference.encoder["<|endoftext|>"]
    all_tokens = [[sot] + reference.encode(text) + [eot] for text in texts]
    result = np.zeros((len(all_tokens), context_length), np.int64)
    for i, tokens in enumerate(all_tokens):
        if len(tokens) > context_length:
            if truncate:
                tokens = tokens[:context_length]
                tokens[-1] = eot
            else:
                raise RuntimeError(
                    f"Input {texts[i]} is too long for context length {context_length}"
                )
        result[i, : len(tokens)] = tokens
    return result


def test_golden_prompts():
    data = np.load(FIXTURE)
    classnames = json.loads(str(data["case"]))["classnames"]
    tokens = tokenize_prompts(classnames)
    assert tokens.dtype == np.int32 and tokens.shape == (6, 30)
    np.testing.assert_array_equal(tokens, data["tokenized_prompts"])


def test_special_tokens_and_singleton():
    tokenizer = get_tokenizer()
    assert (tokenizer.sot_token, tokenizer.eot_token) == (49406, 49407)
    assert tokenizer.vocab_size == 49408
    assert get_tokenizer() is tokenizer


@pytest.mark.parametrize("text", TRICKY)
def test_encode_matches_openai(openai_tokenizer, text):
    assert get_tokenizer().encode(text) == openai_tokenizer.encode(text)


def test_vocabulary_matches_openai(openai_tokenizer):
    ids = list(range(49408))
    assert get_tokenizer().decode(ids) == openai_tokenizer.decode(ids)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=48))
def test_encode_matches_openai_random_text(openai_tokenizer, text):
    assert get_tokenizer().encode(text) == openai_tokenizer.encode(text)


_pieces = st.one_of(
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=10),
    st.sampled_from(["don't", "it's", "&amp;", "&quot;", "Ã©", "\u2019", "...", "!?", "1990", "_"]),
    st.text(alphabet=string.punctuation + string.digits, min_size=1, max_size=4),
)
_separators = st.sampled_from(["", " ", "  ", "\n", "\t", "_"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_pieces, _separators), max_size=20))
def test_encode_matches_openai_words_and_punctuation(openai_tokenizer, parts):
    text = "".join(piece + sep for piece, sep in parts)
    assert get_tokenizer().encode(text) == openai_tokenizer.encode(text)


@pytest.mark.parametrize("context_length", [77, 30, 8])
@pytest.mark.parametrize("truncate", [False, True])
def test_call_matches_clip_tokenize(openai_tokenizer, context_length, truncate):
    texts = [t for t in TRICKY if len(openai_tokenizer.encode(t)) + 2 <= context_length]
    texts.append("a photo of a " + "very " * 3 * context_length + "long name.")
    tokenizer = get_tokenizer()
    if truncate:
        tokens = tokenizer(texts, context_length=context_length, truncate=True)
        assert tokens.dtype == np.int32 and tokens.shape == (len(texts), context_length)
        expected = openai_tokenize(openai_tokenizer, texts, context_length, truncate=True)
        np.testing.assert_array_equal(tokens, expected)
        assert tokens[-1, -1] == tokenizer.eot_token
    else:
        with pytest.raises(ValueError, match=r"'a photo of a very .* has \d+ tokens"):
            tokenizer(texts, context_length=context_length)
        with pytest.raises(RuntimeError):
            openai_tokenize(openai_tokenizer, texts, context_length)
        tokens = tokenizer(texts[:-1], context_length=context_length)
        np.testing.assert_array_equal(
            tokens, openai_tokenize(openai_tokenizer, texts[:-1], context_length)
        )


def test_call_exact_fit_and_padding():
    tokenizer = get_tokenizer()
    ids = tokenizer.encode("a photo of a cat.")  # 6 ids
    row = tokenizer("a photo of a cat.", context_length=8)
    np.testing.assert_array_equal(row, [[tokenizer.sot_token, *ids, tokenizer.eot_token]])
    with pytest.raises(ValueError, match="has 8 tokens"):
        tokenizer("a photo of a cat.", context_length=7)
    padded = tokenizer(["a", "a photo"], context_length=5)
    np.testing.assert_array_equal(padded, [[49406, 320, 49407, 0, 0], [49406, 320, 1125, 49407, 0]])
    assert tokenizer([], context_length=5).shape == (0, 5)
    with pytest.raises(ValueError, match="context_length"):
        tokenizer("a", context_length=1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12), min_size=1))
def test_decode_round_trip(words):
    text = " ".join(words)
    tokenizer = get_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text + " "
    assert tokenizer.decode(np.asarray(tokenizer.encode(text))) == text + " "


def test_decode_rejects_unknown_ids():
    with pytest.raises(ValueError, match="49408"):
        get_tokenizer().decode([320, 49408])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ApplyEyeMakeup", "Apply Eye Makeup"),
        ("YoYo", "Yo Yo"),
        ("climb_stairs", "climb stairs"),
        ("brush hair", "brush hair"),
        ("PlayingDaf", "Playing Daf"),
        ("_leading", " leading"),  # `_` is replaced after the strip, as in TC-CLIP.
        ("Front_Crawl", "Front  Crawl"),
        ("TaiChi", "Tai Chi"),
        ("Ébauche", "Ébauche"),  # Only ASCII capitals split.
    ],
)
def test_normalize_classname(name, expected):
    assert normalize_classname(name) == expected


def test_tokenize_prompts_normalises_and_fills_template(openai_tokenizer):
    expected = openai_tokenize(
        openai_tokenizer, [f"a photo of a {normalize_classname(n)}." for n in NAMES], 30
    )
    np.testing.assert_array_equal(tokenize_prompts(NAMES), expected)
    plain = tokenize_prompts(["YoYo"], template="{}", context_length=6, normalize=False)
    np.testing.assert_array_equal(plain, openai_tokenize(openai_tokenizer, ["YoYo"], 6))
    assert not np.array_equal(plain, tokenize_prompts(["YoYo"], template="{}", context_length=6))


def test_tokenize_prompts_errors():
    with pytest.raises(ValueError, match="empty"):
        tokenize_prompts([])
    with pytest.raises(ValueError, match=r"class name 1 \('_'\) is empty"):
        tokenize_prompts(["cat", "_"])
    with pytest.raises(ValueError, match="class name 0"):
        tokenize_prompts([""])
    with pytest.raises(TypeError, match="sequence of names"):
        tokenize_prompts("ApplyEyeMakeup")
    with pytest.raises(ValueError, match="placeholder"):
        tokenize_prompts(["cat"], template="a photo")
    with pytest.raises(ValueError, match="tokens"):
        tokenize_prompts(["word " * 40])
    assert tokenize_prompts(["word " * 40], truncate=True)[0, -1] == 49407


def test_fresh_instance_equals_singleton():
    text = "a photo of a Tai Chi."
    assert Tokenizer().encode(text) == get_tokenizer().encode(text)
