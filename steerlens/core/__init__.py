"""The core layer: hook names, hooks and gates, ``SteeringVector``, model loading and the
decoding guard, tokenisation, the one batching loop and the fast path. Imports nothing above
it (``make lint`` checks the layers)."""
