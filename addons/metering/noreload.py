"""Keep mitmproxy from reloading the addon when ``meter.py`` changes on disk.

mitmproxy watches every ``-s`` script and, when its file changes, removes the running
addon and loads the file again; when the file disappears, it drops the script for good.
For the meter both lose: a reload re-imports ``meter.py`` only, not the
``addons.metering`` modules it uses, so a new ``meter.py`` beside old modules fails to
load and every later call passes unmetered; even a compatible reload ends the old
instance's flows in flight, so answered calls go unmetered; a deploy that moves the file
away (``git checkout``, an rsync) turns metering off. So the meter asks its script
manager to stop watching once the proxy runs: an upgrade is a restart.
"""

from __future__ import annotations

from typing import Any


def stop_watching(master: Any, addon: object) -> bool:
    """Cancel the file watcher of the script that holds ``addon``; False if none was
    found (mitmproxy's script manager changed shape, or the addon is not a script)."""
    loader = master.addons.get("scriptloader")
    for script in getattr(loader, "addons", ()):
        namespace = getattr(script, "ns", None)
        if namespace is None or addon not in getattr(namespace, "addons", ()):
            continue
        task = getattr(script, "reloadtask", None)
        if task is not None:
            task.cancel()
            script.reloadtask = None
        return True
    return False
