"""``benchmarks/bench_diml.py``'s draw files (``--export-draws`` / ``--import-draws``): what another
implementation fits must be the same truth and episodes, and a malformed file must stop with one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_diml as bench


@pytest.fixture(scope="module")
def draw():
    return bench.e7_draws([(8, 4)], first=1, count=1)[0]


def test_a_saved_draw_loads_as_the_same_truth_and_episodes(tmp_path, draw):
    path = bench.save_draw(str(tmp_path), draw)
    assert path.endswith("e7_8x4_d1.npz")
    back = bench.load_draw(path)
    assert (back.tag, back.group, back.train, back.outside) == ("e7_8x4_d1", "e7_8x4", 19, None)
    np.testing.assert_array_equal(back.actions, draw.actions)
    joint = jnp.asarray(draw.actions[3, 5])
    m0, m1 = draw.env.mechanism, back.env.mechanism
    np.testing.assert_allclose(m1.counterfactual(m1.prepare(back.env.params), joint),
                               m0.counterfactual(m0.prepare(draw.env.params), joint), rtol=0, atol=1e-12)


def test_an_outside_fit_stored_with_a_draw_is_read(tmp_path, draw):
    path = bench.save_draw(str(tmp_path), draw)
    z = dict(np.load(path))
    other = bench.envs.e7_released(jax.random.PRNGKey(7), 8, 4).params
    z.update(fit_emb=np.asarray(other.emb), released_pair=np.float64(1.5e-4),
             **{f"fit_{k}{i}": np.asarray(v) for i, wb in enumerate(other.layers) for k, v in zip("wb", wb)})
    np.savez(path, **z)
    params, own = bench.load_draw(path).outside
    assert own == 1.5e-4
    np.testing.assert_array_equal(params.layers[1][0], other.layers[1][0])


@pytest.mark.parametrize("change, message", [
    (lambda z: z.pop("actions"), "no field 'actions'"),
    (lambda z: z.pop("w0"), "no emb / w0"),
    (lambda z: z.pop("b1"), "w1 without b1"),
    (lambda z: z.update(actions=z["actions"][0]), "actions must be int"),
    (lambda z: z.update(train=np.int32(24)), "do not fit together"),
    (lambda z: z.update(actions=z["actions"] + 4), "do not fit together"),
])
def test_a_malformed_draw_stops_with_one_line_naming_the_file(tmp_path, draw, change, message):
    path = bench.save_draw(str(tmp_path), draw)
    z = dict(np.load(path))
    change(z)
    np.savez(path, **z)
    with pytest.raises(SystemExit) as e:
        bench.load_draw(path)
    assert str(e.value).startswith(f"error: {path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_is_no_npz_stops_with_one_line(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="not a readable .npz draw"):
        bench.load_draw(str(path))
