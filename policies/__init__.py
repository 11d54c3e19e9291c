"""The per-request policy chain, one module per policy with access / response / log phases, after Kong's plugins."""
