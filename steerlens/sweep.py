"""``python -m steerlens.sweep CONFIG`` / ``accelerate launch -m steerlens.sweep CONFIG``: the
sweep job's entry point under its documented name (the job is ``steerlens.experiments.sweep``).
"""

from steerlens.experiments.sweep import main

if __name__ == "__main__":  # pragma: no cover
    main()
