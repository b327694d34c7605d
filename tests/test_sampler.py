import pytest
import torch
from gaussian_toy import GaussianPipeline

from zsampling import NonFiniteLatentsError, sample
from zsampling.schedule import ddim


def run(pipe=None, **kwargs):
    pipe = pipe or GaussianPipeline()
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    kwargs.setdefault("num_inference_steps", 10)
    kwargs.setdefault("output_type", "latent")
    return sample(pipe, kwargs.pop("prompt", ["a", "b"]), progress=False, **kwargs)


def reference_loop(pipe, x, steps, g1, g2, window, rounds, zag):
    """Z-Sampling written out from docs/design.md with the scheduler's own lists, independent of zsampling."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    ts = [int(t) for t in scheduler.timesteps]
    ab = scheduler.alphas_cumprod.double()
    final = float(scheduler.final_alpha_cumprod)
    k = 1000 // steps
    eps = pipe.denoiser.eps

    def guided(z, t, g):
        return eps(z, t, 0.0) + g * (eps(z, t, 1.0) - eps(z, t, 0.0))

    for i, t in enumerate(ts):
        a_next = float(ab[ts[i + 1]]) if i + 1 < steps else final
        if i < window:
            for _ in range(rounds):
                y = ddim(x, guided(x, t, g1), float(ab[t]), a_next)
                if zag == "official":
                    source = ts[i + 1] - k
                    a_from = float(ab[source]) if source >= 0 else float(ab[0])
                    x = ddim(y, guided(y, t, g2), a_from, a_next)
                else:
                    x = ddim(y, guided(y, ts[i + 1], g2), a_next, float(ab[t]))
        x = ddim(x, guided(x, t, g1), float(ab[t]), a_next)
    return x


@pytest.mark.parametrize(
    ("window", "rounds", "g2", "zag"),
    [(0, 1, 0.0, "official"), (9, 1, 0.0, "official"), (4, 2, 0.0, "official"), (9, 1, 1.5, "official"),
     (9, 1, 0.0, "ddim"), (5, 3, 2.0, "ddim")],
)
def test_loop_equals_a_plain_reference_loop(window, rounds, g2, zag):
    pipe = GaussianPipeline()
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    out = run(pipe, latents=x, guidance_scale=3.0, inversion_guidance_scale=g2, zigzag_steps=window,
              rounds=rounds, zag=zag)
    expected = reference_loop(pipe, x.clone(), 10, 3.0, g2, window, rounds, zag)
    torch.testing.assert_close(out.latents, expected.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("g1", [3.0, 0.5, -1.0])
@pytest.mark.parametrize(("g2", "zag_rows"), [(0.0, 1), (1.0, 1), (0.5, 2), (2.0, 2)])
@pytest.mark.parametrize(("window", "rounds"), [(0, 1), (9, 1), (4, 2)])
def test_network_rows_are_branch_aware(g1, g2, zag_rows, window, rounds):
    steps = 10
    out = run(guidance_scale=g1, inversion_guidance_scale=g2, zigzag_steps=window, rounds=rounds)
    assert out.nfe == 2 * steps + (2 + zag_rows) * window * rounds
    assert out.network_rows == 2 * out.nfe  # batch of two prompts


def test_forcing_both_branches_costs_what_the_released_code_pays():
    out = run(guidance_scale=3.0, inversion_guidance_scale=0.0, zigzag_steps=9, branches="both")
    assert out.nfe == 2 * 10 + 4 * 9
    torch.testing.assert_close(out.latents, run(guidance_scale=3.0, zigzag_steps=9).latents, rtol=0, atol=0)


def test_guidance_zero_and_one_need_one_branch_per_step():
    assert run(guidance_scale=1.0, zigzag_steps=0).nfe == 10
    assert run(guidance_scale=0.0, zigzag_steps=0).nfe == 10


def test_same_seed_same_latents_and_generator_semantics():
    first = run(guidance_scale=3.0)
    second = run(guidance_scale=3.0)
    assert torch.equal(first.latents, second.latents)
    assert not torch.equal(first.latents, run(guidance_scale=3.0, generator=torch.Generator().manual_seed(1)).latents)
    # one generator per sample, as in diffusers: sample k depends only on its own generator
    pair = run(guidance_scale=3.0, generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    single = run(guidance_scale=3.0, prompt=["b"], generator=[torch.Generator().manual_seed(6)])
    torch.testing.assert_close(pair.latents[1:], single.latents, rtol=0, atol=0)


def test_window_as_explicit_step_set():
    pipe = GaussianPipeline()
    out = run(pipe, guidance_scale=3.0, zigzag_steps=[2, 5])
    assert out.nfe == 20 + 3 * 2
    zag_timesteps = [t for t, branches in pipe.denoiser.calls if branches.count == 1]
    assert zag_timesteps == [701, 401]  # the official zag evaluates at t_i of steps 2 and 5


class ListRecorder:
    def __init__(self):
        self.events = []

    def record(self, event):
        self.events.append(event)


def test_recorder_sees_every_operation_in_order():
    recorder = ListRecorder()
    out = run(guidance_scale=3.0, zigzag_steps=2, rounds=2, recorder=recorder)
    ops = [(e.op, e.step, e.round) for e in recorder.events]
    assert ops[:6] == [("zig", 0, 0), ("zag", 0, 0), ("zig", 0, 1), ("zag", 0, 1), ("step", 0, 2), ("zig", 1, 0)]
    assert [op for op in ops if op[1] == 9] == [("step", 9, 0)]
    assert len(ops) == 10 + 2 * 2 * 2
    assert torch.equal(recorder.events[-1].x_out, out.latents)
    zag = recorder.events[1]
    assert zag.guidance == 0.0 and zag.eps.cond is None and zag.eps.uncond is not None
    assert torch.equal(zag.x_in, recorder.events[0].x_out)  # the zag starts from the zig's y


def test_nan_guard_names_step_and_operation():
    pipe = GaussianPipeline(poison_at=7)  # the 8th network call returns inf: step 2's zig (2 calls per op)
    with pytest.raises(NonFiniteLatentsError, match=r"after the zig of step 2 \(round 0\)"):
        run(pipe, guidance_scale=3.0, zigzag_steps=9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_type": "jpeg"}, "output_type must be one of"),
        ({"output_type": "np"}, r"output_type must be one of \('pt', 'latent'\) for GaussianPipeline"),
        ({"latents": torch.zeros(1, 4, 3, 3)}, r"latents must have shape \(2, 4, 3, 3\)"),
        ({"negative_prompt": ["x", "y", "z"]}, "negative_prompt must be one string or 2 strings"),
        ({"prompt": []}, "prompt must be a string or a non-empty list"),
        ({"zigzag_steps": 10}, "zigzag_steps"),
    ],
)
def test_bad_input_fails_before_any_network_call(kwargs, message):
    pipe = GaussianPipeline()
    with pytest.raises(ValueError, match=message):
        run(pipe, **kwargs)
    assert pipe.denoiser.network_rows == 0
