"""Pure JAX mechanism layer of mbiagents.

No I/O, no SQL, no LLM and no global state beyond one switch: importing this package turns
on JAX's 64-bit mode, because payments are settled to 1e-6 units and welfare is compared
to closed forms at 1e-6 relative, which float32 cannot carry. Every function is
deterministic given its inputs (and a PRNG key where random), and jit-able.

This package must never import ``mbiagents``.
"""

import jax

jax.config.update("jax_enable_x64", True)
