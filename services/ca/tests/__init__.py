"""Unit tests of the CA service's domain modules (no gRPC, no database)."""
