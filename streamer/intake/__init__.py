"""Records in: the source contract, the Kafka consumer, decoding, the dead-letter sink.

Everything between a Kafka record and a validated `Pair` lives here: `source` (the contract and
the in-memory source), `kafka_source` / `kafka_group` (the only modules importing `kafka` for
consuming), `codec` and `decode` (the one place a record is parsed), `sink` (dead letters),
`manifest` (reference image-text manifests).

May import: `streamer.records`, `streamer.config`, `streamer.logs`. Nothing from learning,
evaluation, state or service.
"""
