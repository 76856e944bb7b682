"""`sftd`, the server agent: enrollment, accounts, sshd wiring, the broker's control channel."""
