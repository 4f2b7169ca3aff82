"""Tokenizer, prompt and sequence layout of the VLA teacher: everything between a scene's arrays and ``input_ids``.

No language annotation is involved: the prompt is a fixed template filled with the driving command and the ego
status (velocity, acceleration) of the current frame, i.e. exactly what the planner also sees. The layout is::

    [bos] <image_start> <image> x T <image_end> command : left . velocity : + 0 8 . 3 + 0 . 0 ... actions : a_1 .. a_N

left-padded so that the action tokens of every row sit in the last N positions (training) and generation appends
to an aligned batch. CPU profiles build a small word-level tokenizer in code (no files, no download); a real
backbone brings its own tokenizer from ``backbone.path``. Either way the image placeholders and the latent action
tokens ``<act_0> .. <act_{K-1}>`` are added as special tokens (the model's embeddings are resized to match).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentvla.schema import DRIVING_COMMANDS
from latentvla.vla.facts import FACT_WORDS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
IMAGE, IMAGE_START, IMAGE_END = "<image>", "<image_start>", "<image_end>"
# (placeholder, start, end) a real checkpoint's tokenizer may already own: its pretrained weights know these
# (Qwen2-VL / Qwen2.5-VL), so the teacher uses them instead of adding fresh, untrained specials
KNOWN_IMAGE_SPECIALS: tuple[tuple[str, str, str], ...] = (("<|image_pad|>", "<|vision_start|>", "<|vision_end|>"),)
# Words of the prompt template; digits and punctuation are single tokens, so every number costs a fixed count.
# The pretraining stand-in's perception words (vla/facts.py) are part of every tokenizer, so a teacher trained from
# scratch and one fine-tuned from a pretraining run share ids.
BASE_WORDS: tuple[str, ...] = (
    "command", "velocity", "acceleration", "actions", "m", "s", *DRIVING_COMMANDS,
    *"0123456789", ".", ",", ":", "+", "-", "/", "?", *FACT_WORDS,
)


def action_token(code: int) -> str:
    return f"<act_{code}>"


def build_tokenizer(words: tuple[str, ...] = BASE_WORDS):
    """A word-level fast tokenizer over ``words`` (digits split one by one), built in code: reproducible and
    offline. Saved with every run (``tokenizer.json``) so fine-tuning from a pretrain run keeps its ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((PAD, BOS, EOS, UNK, *dict.fromkeys(words)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                  pre_tokenizers.Digits(individual_digits=True)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK)


@dataclass(frozen=True)
class Vocab:
    """Ids the model needs: the K action tokens (in code order) and the image / padding specials."""

    actions: tuple[int, ...]
    image: int
    image_start: int
    image_end: int
    pad: int
    bos: int | None

    @property
    def num_codes(self) -> int:
        return len(self.actions)


def add_vla_tokens(tokenizer, num_codes: int) -> Vocab:
    """Add the image specials and ``<act_0> .. <act_{K-1}>`` (once) and return their ids. A tokenizer that
    already has a known image triple (``KNOWN_IMAGE_SPECIALS``, e.g. a real Qwen2.5-VL checkpoint's) keeps it."""
    if num_codes < 2:
        raise ValueError(f"a latent action vocabulary needs at least 2 codes, got {num_codes}")
    have = tokenizer.get_vocab()
    image = next((t for t in KNOWN_IMAGE_SPECIALS if all(x in have for x in t)), (IMAGE, IMAGE_START, IMAGE_END))
    wanted = [*image, *(action_token(k) for k in range(num_codes))]
    missing = [t for t in wanted if t not in have]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    ids = tokenizer.convert_tokens_to_ids(wanted)
    return Vocab(actions=tuple(ids[3:]), image=ids[0], image_start=ids[1], image_end=ids[2],
                 pad=int(tokenizer.pad_token_id), bos=tokenizer.bos_token_id)


def prompt_text(ego_status: np.ndarray) -> str:
    """The fixed prompt of one scene from its (8,) ego status (velocity 2, acceleration 2, one-hot command 4).
    Numbers have fixed widths (speed two digits, acceleration one; one decimal), so prompts line up in a batch."""
    e = np.asarray(ego_status, dtype=np.float64)
    if e.shape != (8,) or not np.isfinite(e).all():
        raise ValueError(f"ego status must be 8 finite numbers (velocity, acceleration, one-hot command), got {e}")
    command = DRIVING_COMMANDS[int(np.argmax(e[4:8]))]
    return (f"command : {command} . velocity : {e[0]:+05.1f} {e[1]:+04.1f} . acceleration : {e[2]:+04.1f} "
            f"{e[3]:+04.1f} . actions :")


def chat_wrap(tokenizer) -> tuple[str, str] | None:
    """Text before and after a user turn in the tokenizer's chat template (a real Instruct checkpoint's:
    system turn, ``<|im_start|>user`` ... ``<|im_end|>`` then the assistant's opening), so the image + prompt sit
    where the model was tuned to read a request and the action tokens where it answers. None without a template
    (the tokenizers built in code)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark = "LATENTVLA_USER_TURN"
    text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(mark) != 1:
        raise ValueError("the tokenizer's chat template does not render a plain user message once; set "
                         "backbone.chat_template=false to use the plain prompt")
    before, after = text.split(mark)
    return before, after


class VLAProcessor:
    """Scenes -> model inputs. ``__call__(ego_status (B, 8), actions (B, N) | None)`` returns ``input_ids`` and
    ``attention_mask`` (B, L), left-padded; with ``actions`` the last N positions hold the action tokens."""

    def __init__(self, tokenizer, vocab: Vocab, num_image_tokens: int, chat: bool = True):
        self.tokenizer, self.vocab, self.num_image_tokens = tokenizer, vocab, num_image_tokens
        wrap = chat_wrap(tokenizer) if chat else None
        self.chat = None if wrap is None else (self.text_ids(wrap[0]), self.text_ids(wrap[1]))

    def text_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.tokenizer.unk_token_id is not None and self.tokenizer.unk_token_id in ids:
            raise ValueError(f"the text {text!r} has words outside the tokenizer's vocabulary")
        return ids

    def prefix_ids(self, ego_status: np.ndarray | None = None, text: str | None = None) -> list[int]:
        """Image block then the ego prompt (or ``text``, e.g. a pretraining question)."""
        v = self.vocab
        before, after = self.chat if self.chat is not None else ([v.bos] if v.bos is not None else [], [])
        image = [v.image_start] + [v.image] * self.num_image_tokens + [v.image_end]
        return before + image + self.text_ids(prompt_text(ego_status) if text is None else text) + after

    def text_batch(self, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        """Image + ``prompts[i]`` then ``answers[i]`` and EOS, left-padded; ``labels`` (B, L) hold the next-token
        targets of the answer and EOS positions (-100 elsewhere, the usual ignore index)."""
        eos = self.tokenizer.eos_token_id
        rows, spans = [], []
        for p, a in zip(prompts, answers, strict=True):
            answer = self.text_ids(a) + ([eos] if eos is not None else [])
            rows.append(self.prefix_ids(text=p) + answer)
            spans.append(len(answer))
        out = self._pad(rows)
        labels = torch.full_like(out["input_ids"], -100)
        for i, n in enumerate(spans):
            labels[i, -n:] = out["input_ids"][i, -n:]
        out["labels"] = labels
        return out

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(map(len, rows), default=0)
        input_ids = torch.full((len(rows), width), self.vocab.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def __call__(self, ego_status: np.ndarray, actions: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        rows = [self.prefix_ids(e) for e in np.asarray(ego_status)]
        if actions is not None:
            codes = np.asarray(actions)
            if codes.ndim != 2 or len(codes) != len(rows):
                raise ValueError(f"actions must be (B, N) codes for {len(rows)} scenes, got shape {codes.shape}")
            if codes.min(initial=0) < 0 or codes.max(initial=0) >= self.vocab.num_codes:
                raise ValueError(f"action codes must lie in [0, {self.vocab.num_codes}), got "
                                 f"[{codes.min()}, {codes.max()}]")
            ids = np.asarray(self.vocab.actions)
            rows = [r + ids[c].tolist() for r, c in zip(rows, codes)]
        return self._pad(rows)
