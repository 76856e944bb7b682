"""The one shared runtime of sft's platform services, broker, agent and client.

Config, logging, TLS material, metrics, domain errors, the gRPC server bootstrap and
the database engine live here so no service carries its own copy. Nothing in this
package knows about a particular service.
"""
