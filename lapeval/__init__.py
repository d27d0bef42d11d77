"""lapeval: LAPE language-specific neurons, their amplification / deactivation, and LSS, inside lm-eval."""

__version__ = "0.1.0"
