"""Gymnasium simulator of dispatch, scenarios calibrated from the store, baselines.

- `scenario`: `Scenario`, the world as JSON-able data (`default()`, `fit(store, window)`);
  `calibration` holds the estimators behind `fit`.
- `dynamics`: the batched physics every env runs (plans drawn at reset, fleet state,
  outcomes); `env`: `DispatchEnv` (one episode, gymnasium API); `vector`:
  `VecDispatchEnv` (the fast NumPy batch, equal to `DispatchEnv` per seed).
- `policies`: `Policy` protocol, `RandomPolicy`, `GreedyPolicy`, `HindsightPolicy`
  (with `planning`, its exact replays); `rollout`: seed sets and `run_episodes`.
- `producer`: `simulated_events` and the `dispatchloop simulate` Kafka producer.

Nothing here is imported at package import: pick the module you need.
"""
