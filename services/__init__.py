"""The platform's gRPC services (CA, inventory, auth), the broker, and `sft-platform`.

No service imports another; they talk through the contracts in proto/. Only the
composition root, services.platform, knows them all.
"""
