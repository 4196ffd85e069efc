"""The plugins bundled with hookrunner. Each uses only the public API (``import hookrunner``) and is found
through the ``hookrunner`` entry-point group, exactly as a third party's plugin would be."""
