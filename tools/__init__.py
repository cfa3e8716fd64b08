"""Development tools that run beside the app (not part of the ServerApp or ClientApp)."""
