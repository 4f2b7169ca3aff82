"""VLA teacher units: prompt and sequence layout, action vocabulary, generation, save/load, both VLM families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvla.vla.configuration import VLAConfig
from latentvla.vla.modeling import LatentVLATeacher
from latentvla.vla.processor import BASE_WORDS, VLAProcessor, add_vla_tokens, build_tokenizer, prompt_text

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (1, 6)  # stride-32 grid of three 32x64 cameras (quick features)


def ego(vx=8.34, vy=-0.02, ax=0.2, ay=0.0, command=1) -> np.ndarray:
    e = np.zeros(8, np.float32)
    e[:4] = vx, vy, ax, ay
    e[4 + command] = 1
    return e


def tiny_cfg(family: str = "qwen2_5_vl", **backbone) -> VLAConfig:
    cfg = VLAConfig()
    b = cfg.backbone
    b.family, b.hidden_size, b.layers, b.heads, b.kv_heads, b.intermediate_size = family, 32, 1, 2, 1, 64
    b.image_pool, b.pooled_visual_tokens = [1, 1], 2
    for k, v in backbone.items():
        setattr(b, k, v)
    return cfg


def make_teacher(cfg: VLAConfig, num_codes: int = 8, positions: int = 4, seed: int = 0) -> LatentVLATeacher:
    tok = build_tokenizer()
    torch.manual_seed(seed)
    return LatentVLATeacher(cfg, tok, add_vla_tokens(tok, num_codes), positions, GRID)


def features(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.from_numpy(np.stack([ego(vx=float(v), command=i % 3) for i, v in
                                   enumerate(torch.rand(n, generator=g) * 15)]))
    return {"ego_status": e, "camera_s32": torch.randn(n, 320, *GRID, generator=g).half()}


def test_prompt_is_the_fixed_template_of_command_and_ego_status():
    assert prompt_text(ego()) == ("command : straight . velocity : +08.3 -0.0 . acceleration : +0.2 +0.0 . "
                                  "actions :")
    assert prompt_text(ego(vx=-3.0, command=0)).startswith("command : left . velocity : -03.0")
    with pytest.raises(ValueError, match="8 finite"):
        prompt_text(np.full(8, np.nan))


def test_sequences_are_left_padded_with_actions_last():
    tok = build_tokenizer()
    vocab = add_vla_tokens(tok, 8)
    assert add_vla_tokens(tok, 8) == vocab and len(tok) == len(build_tokenizer()) + 3 + 8  # idempotent
    assert list(vocab.actions) == list(range(vocab.actions[0], vocab.actions[0] + 8))
    proc = VLAProcessor(tok, vocab, num_image_tokens=3)
    # fixed-width numbers: every scene's prompt has the same length, whatever the speed
    lengths = {len(proc.prefix_ids(ego(vx=v, ax=a))) for v in (0.0, 9.99, 35.0) for a in (-4.0, 0.0, 9.9)}
    assert len(lengths) == 1
    codes = np.array([[1, 2, 3], [7, 0, 5]])
    batch = proc(np.stack([ego(), ego(vx=12.0)]), codes)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and bool(mask.all())
    np.testing.assert_array_equal(ids[:, -3:].numpy(), np.asarray(vocab.actions)[codes])
    assert int((ids[0] == vocab.image).sum()) == 3
    assert tok.convert_ids_to_tokens(ids[0, -4:].tolist()) == [":", "<act_1>", "<act_2>", "<act_3>"]
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        proc(np.stack([ego()]), np.array([[8, 0, 0]]))


def test_generation_agrees_with_teacher_forcing_on_its_own_tokens():
    """Greedy KV-cached decoding = the argmax of a full teacher-forced pass over the generated tokens (each
    position's logits depend only on the prefix), restricted to action codes."""
    model = make_teacher(tiny_cfg()).eval()
    f = features(5)
    codes = model.generate(f)
    assert codes.shape == (5, 4) and codes.dtype == torch.long
    with torch.no_grad():
        forced = model.action_logits(model(f, codes)["logits"]).argmax(-1)
    torch.testing.assert_close(forced, codes)
    enc = model.encode(f)
    assert enc["embeddings"].shape == (5, 2 + 4, 32)
    torch.testing.assert_close(enc["probs"].sum(-1), torch.ones(5, 4))
    torch.testing.assert_close(enc["codes"], codes)


def test_blind_teacher_ignores_the_images():
    model = make_teacher(tiny_cfg())
    model.cfg.blind = True
    a, b = features(2, seed=1)["camera_s32"], features(2, seed=2)["camera_s32"]
    torch.testing.assert_close(model.image_embeds(a), model.image_embeds(b))
    model.cfg.blind = False
    assert not torch.allclose(model.image_embeds(a), model.image_embeds(b))


def _fit(model: LatentVLATeacher, f: dict, codes: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(model(f, codes)["logits"], codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
def test_each_family_learns_image_dependent_codes(family):
    """Codes that depend on the camera features only (one ego status for all scenes, so the prompt cannot tell
    them apart): the teacher fits them, a blind one stays near the majority rate."""
    f = features(32, seed=3)
    f["ego_status"] = torch.from_numpy(np.stack([ego()] * 32))
    codes = torch.stack([(f["camera_s32"][:, j, 0, j].float() > 0).long() * (j + 1) for j in range(4)], dim=1)
    model = make_teacher(tiny_cfg(family))
    losses = _fit(model, f, codes, 60)
    assert losses[-1] < 0.5 * losses[0]
    acc = float((model.eval().generate(f) == codes).float().mean())
    blind = make_teacher(tiny_cfg(family))
    blind.cfg.blind = True
    _fit(blind, f, codes, 60)
    blind_acc = float((blind.eval().generate(f) == codes).float().mean())
    assert acc > 0.9 and blind_acc < 0.8, (acc, blind_acc)


def test_lora_and_frozen_language_model_train_only_what_they_should():
    from latentvla.vla.configuration import LoraConfig

    lora = make_teacher(tiny_cfg(lora=LoraConfig(r=4, alpha=8)))
    trainable = {n for n, p in lora.lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n == "embed_tokens.weight" for n in trainable), trainable
    assert all(p.requires_grad for p in lora.projector.parameters())
    frozen = make_teacher(tiny_cfg(freeze_lm=True))
    trainable = {n for n, p in frozen.lm.named_parameters() if p.requires_grad}
    assert trainable == {"embed_tokens.weight"}


def test_save_load_gives_identical_logits(tmp_path):
    from latentvla.vla.checkpoint import load_teacher, save_teacher

    model = make_teacher(tiny_cfg(), seed=5).eval()
    f, codes = features(3), torch.randint(0, 8, (3, 4))
    save_teacher(model, tmp_path)
    loaded, cfg = load_teacher(tmp_path)
    assert cfg == model.cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded(f, codes)["logits"], model(f, codes)["logits"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.generate(f), model.generate(f))


def test_wrong_camera_grid_is_a_clear_error():
    model = make_teacher(tiny_cfg())
    f = features(1)
    f["camera_s32"] = torch.zeros(1, 320, 2, 6)
    with pytest.raises(ValueError, match="teacher was built for"):
        model.generate(f)


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone.family"):
        VLAConfig(backbone=tiny_cfg("gpt2").backbone)


def test_native_vision_path_trains_and_round_trips(tmp_path):
    """vision=native: the family's own (tiny) tower reads the stitched uint8 image; its tokens depend on the
    image, it stays frozen by default, and save/load keeps the logits."""
    from latentvla.vla.checkpoint import load_teacher, save_teacher

    cfg = tiny_cfg(vision="native")
    cfg.features.camera.backbone = "none"
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = LatentVLATeacher(cfg, tok, add_vla_tokens(tok, 8), 4, (56, 168))
    assert model.processor.num_image_tokens == (56 // 28) * (168 // 28)
    assert not any(p.requires_grad for p in model.adapter.vision_tower(model.vlm).parameters())
    g = torch.Generator().manual_seed(0)
    f = {"ego_status": torch.from_numpy(np.stack([ego()] * 3)),
         "camera": torch.randint(0, 255, (3, 3, 56, 168), generator=g, dtype=torch.uint8)}
    emb = model.image_embeds(f["camera"])
    assert emb.shape == (3, 12, 32) and not torch.allclose(emb[0], emb[1])
    codes = torch.randint(0, 8, (3, 4), generator=g)
    losses = _fit(model, f, codes, 30)
    assert losses[-1] < losses[0]
    save_teacher(model.eval(), tmp_path)
    loaded, _ = load_teacher(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(f, codes)["logits"], model(f, codes)["logits"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="camera must be"):
        model.image_embeds(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_native_vision_needs_the_raw_camera_and_a_native_family():
    with pytest.raises(ValueError, match="features.camera.backbone=none"):
        VLAConfig(backbone=tiny_cfg(vision="native").backbone)
    cfg = tiny_cfg("idefics3", vision="native")
    with pytest.raises(ValueError, match="native is built for"):
        VLAConfig(backbone=cfg.backbone, features=VLAConfig().features.__class__(
            camera=type(VLAConfig().features.camera)(backbone="none")))


def test_trajectory_head_trains_with_dropout_on_and_fresh_weights(tmp_path):
    """The head phase trains the pooling and head only, from fresh weights, in train mode (Lightning keeps a
    module's eval mode, which silently switched the head's dropout off), and leaves the teacher untouched."""
    from latentvla.vla.data import SplitArrays
    from latentvla.vla.trajectory import train_head

    cfg = tiny_cfg()
    cfg.trajectory.epochs, cfg.trajectory.hidden, cfg.trajectory.token_dim = 2, 16, 4
    model = make_teacher(cfg).eval()
    f = features(12)
    t = np.cumsum(np.tile([[1.0, 0.0, 0.0]], (12, 8, 1)), axis=1).astype(np.float32)

    def arrays(n):
        return SplitArrays([str(i) for i in range(n)], {k: v[:n].numpy() for k, v in f.items()},
                           np.zeros((n, 4), np.int64), ["cruise"] * n, t[:n])

    modes = []
    model.traj_ctx.register_forward_hook(lambda m, i, o: modes.append(m.training))
    lm_before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    head_before = model.traj_out[0].weight.clone()
    out = train_head(model, cfg, arrays(12), arrays(6), tmp_path, quiet=True)
    assert np.isfinite(out["val_ade"]) and True in modes
    assert all(torch.equal(v, model.lm.state_dict()[k]) for k, v in lm_before.items())
    assert not torch.equal(head_before, model.traj_out[0].weight)
    assert all(p.requires_grad for p in model.lm.parameters())  # switches restored


def native_teacher(seed: int = 0, tok=None) -> LatentVLATeacher:
    cfg = tiny_cfg(vision="native")
    cfg.features.camera.backbone = "none"
    tok = build_tokenizer() if tok is None else tok
    torch.manual_seed(seed)
    return LatentVLATeacher(cfg, tok, add_vla_tokens(tok, 8), 4, (56, 168))


def native_features(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"ego_status": torch.from_numpy(np.stack([ego(vx=2.0 * i, command=i % 3) for i in range(n)])),
            "camera": torch.randint(0, 255, (n, 3, 56, 168), generator=g, dtype=torch.uint8)}


def test_mrope_positions_by_hand():
    """Two text tokens, a 2 x 3 image, two text tokens, one left pad: the image's tokens sit at (2, 2 + row,
    2 + col) and the text after it resumes at 2 + max(2, 3) = 5."""
    from latentvla.vla.modeling import mrope_positions

    img = 9
    ids = torch.tensor([[0, 1, 1, *[img] * 6, 1, 1]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    pos = mrope_positions(ids, mask, img, (2, 3))
    assert pos[:, 0].tolist() == [[0, 0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
                                  [0, 0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
                                  [0, 0, 1, 2, 3, 4, 2, 3, 4, 5, 6]]
    with pytest.raises(ValueError, match="contiguous image tokens"):
        mrope_positions(torch.tensor([[img, 1, img]]), torch.ones(1, 3, dtype=torch.long), img, (1, 2))


def test_native_positions_are_qwen_mrope_as_transformers_computes_them():
    """The native path lays out the image tokens' rotary positions as Qwen2.5-VL's pretrained weights expect,
    checked against transformers' own ``get_rope_index`` on left-padded rows of different lengths."""
    model = native_teacher()
    assert model.image_grid == (2, 6)
    proc, v = model.processor, model.vocab
    rows = [proc.prefix_ids(ego()) + list(v.actions[:k]) for k in (0, 3, 1)]
    batch = proc._pad(rows)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ours = model.positions(ids, mask)
    ref, _ = model.vlm.model.get_rope_index(ids, mm_token_type_ids=(ids == v.image).int(),
                                            image_grid_thw=torch.tensor([[1, 4, 12]] * 3), attention_mask=mask)
    assert ours.shape == (3, 3, ids.shape[1])
    torch.testing.assert_close(ours, ref)
    assert not torch.equal(ours[1], ours[2])  # truly 2-D over the image, not the 1-D layout
    lite = make_teacher(tiny_cfg())
    lite_batch = lite.processor._pad([lite.processor.prefix_ids(ego())])
    assert lite.positions(lite_batch["input_ids"], lite_batch["attention_mask"]).ndim == 2


def test_native_generation_agrees_with_teacher_forcing():
    """KV-cached decoding continues the M-RoPE positions exactly as a full teacher-forced pass lays them out."""
    model = native_teacher().eval()
    f = native_features(4)
    codes = model.generate(f)
    with torch.no_grad():
        logits = model.action_logits(model(f, codes)["logits"])
    torch.testing.assert_close(logits.argmax(-1), codes)


def test_a_real_checkpoints_image_specials_are_kept():
    """A tokenizer that already owns Qwen's <|vision_start|> <|image_pad|> <|vision_end|> keeps them (its
    pretrained weights know them); only the action tokens are added."""
    tok = build_tokenizer(("command", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"))
    size = len(tok)
    vocab = add_vla_tokens(tok, 8)
    assert len(tok) == size + 8
    assert (vocab.image, vocab.image_start, vocab.image_end) == tuple(
        tok.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"]))
    plain = build_tokenizer()
    image = add_vla_tokens(plain, 8).image
    assert plain.convert_tokens_to_ids("<image>") == image and len(plain) == len(build_tokenizer()) + 3 + 8


def test_real_weights_route_loads_the_checkpoint_and_its_run_stands_alone(tmp_path):
    """``backbone.path``: the teacher starts from the checkpoint's own weights and tokenizer (a tiny
    Qwen2.5-VL saved in the Hugging Face format, with Qwen's image specials), lays out M-RoPE positions, and its
    saved run reloads with identical logits after the checkpoint directory is gone."""
    import shutil

    from latentvla.vla.checkpoint import load_teacher, save_teacher
    from latentvla.vla.modeling import ADAPTERS
    from latentvla.vla.train import build_teacher

    ckpt = tmp_path / "qwen-tiny"
    tok = build_tokenizer((*BASE_WORDS, "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "user", "assistant"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    cfg = tiny_cfg(vision="native")
    cfg.features.camera.backbone = "none"
    torch.manual_seed(1)
    hf = ADAPTERS["qwen2_5_vl"].model_class()(ADAPTERS["qwen2_5_vl"].tiny_config(cfg.backbone, len(tok)))
    hf.save_pretrained(str(ckpt))
    tok.save_pretrained(str(ckpt))
    cfg.backbone.path = str(ckpt)
    model = build_teacher(cfg, num_codes=8, num_positions=4, camera_grid=(56, 168)).eval()
    lm_weight = "model.language_model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(model.vlm.state_dict()[lm_weight], hf.state_dict()[lm_weight], rtol=0, atol=0)
    assert model.vocab.image == model.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # the Instruct layout: a user turn holding image + prompt, then the assistant's turn where actions follow
    ids = model.processor.tokenizer.convert_ids_to_tokens(model.processor.prefix_ids(ego()))
    assert ids[:3] == ["<|im_start|>", "user", "<|vision_start|>"] and ids[-5:] == [
        "actions", ":", "<|im_end|>", "<|im_start|>", "assistant"]
    assert build_tokenizer().chat_template is None and make_teacher(tiny_cfg()).processor.chat is None
    f, codes = native_features(3), torch.randint(0, 8, (3, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(f, codes)["logits"]
    save_teacher(model, tmp_path / "run")
    shutil.rmtree(ckpt)
    loaded, loaded_cfg = load_teacher(tmp_path / "run")
    assert loaded_cfg.backbone.path == str(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(loaded(f, codes)["logits"], logits, rtol=0, atol=0)
    torch.testing.assert_close(loaded.generate(f), model.generate(f))
