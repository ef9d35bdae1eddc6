"""stylize: fast neural style transfer (Johnson et al. networks with IN, CIN and AdaIN)."""
__version__ = "0.1.0"
