"""Training machinery: the LightningModule, callbacks, optimizer and schedule, trainer presets
(scale), checkpoints, trackers, sweep-job records, compose-time validation and the run protocol.
It builds on the components (corruption, objectives, model, tasks), data and core."""
