"""What the LightningModules share for training: ``optim`` (8-bit optimizers, warm-up schedule;
``conf/optimizer``), ``precision`` (fused clipping, cached casts), ``faults`` (skip NaN batches and ratio
explosions) and ``sharding`` (global minibatches and normalisers under DDP)."""
