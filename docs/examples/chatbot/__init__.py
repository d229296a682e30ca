"""A small chat-bot style event processor that uses retryqueue (an example application)."""
