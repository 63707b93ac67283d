"""hetcache.tuner: search the fastest cache policy that keeps quality within a budget (Optuna, `hetcache-tune`).

from hetcache.tuner.budget import parse_budget
from hetcache.tuner.study import TuneConfig, tune
result = tune(TuneConfig(workload, parse_budget("psnr=30"), out=Path("runs/tune")))
"""
