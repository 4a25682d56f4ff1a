"""State: checkpoints, the ledger of offsets, snapshots, exports, published versions, rollback.

May import: `streamer.records`, `streamer.config`, `streamer.logs`, `streamer.intake`,
`streamer.learning`, `streamer.evaluation`.
"""
