# mailman_mmsidecar: Mailman 3 runners honour the mmsidecar runner gate.
# Copyright (C) 2026 The mmsidecar authors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License as published by the
# Free Software Foundation, either version 3 of the License, or (at your
# option) any later version.
#
# This program is distributed in the hope that it will be useful, but
# WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the GNU General
# Public License for more details.
#
# You should have received a copy of the GNU General Public License along
# with this program.  If not, see <https://www.gnu.org/licenses/>.
#
# SPDX-License-Identifier: GPL-3.0-or-later

"""A Mailman 3 plugin: every queue runner checks mmsidecar's runner gate
before each dequeue, and keeps a runner record the sidecar counts.

    [plugin.mailman_mmsidecar]
    class: mailman_mmsidecar.GatePlugin
    enabled: yes

With the plugin and no sidecar (no gate record), Mailman dequeues
nothing.  See README.md next to this package and docs/gate.md.
"""

from mailman.interfaces.plugin import IPlugin
from public import public
from zope.interface import implementer

from mailman_mmsidecar.plugin import PLUGIN_VERSION, install

__version__ = PLUGIN_VERSION


@public
@implementer(IPlugin)
class GatePlugin:
    """Mailman's plugin interface: pre_hook() installs the gate."""

    # No REST resource.
    resource = None

    def pre_hook(self):
        """Install the gated switchboard (every process; never raises)."""
        install(getattr(self, 'name', 'mailman_mmsidecar'))

    def post_hook(self):
        """Nothing to do once the database is up."""
