"""The `sft` verbs, grouped by what they are about; `client.cli` puts them together."""
