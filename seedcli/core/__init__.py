"""The purify-and-distill engine: noise (isolate), purify (identify + purge), losses (mode-seeking distillation).

Submodules are imported explicitly (`from seedcli.core.losses import seed_loss`); this package file
imports nothing so that `import seedcli.core` stays free of torch.
"""
