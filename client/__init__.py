"""`sft`, the command people use: enroll, list servers, ssh, rdp. Never imports services."""
