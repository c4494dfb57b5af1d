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

"""The Mailman side: the plugin class and the gated switchboard.

Mailman runs a plugin's pre_hook() in the master, in every runner process
and in every CLI command.  The hook replaces the Switchboard class that
mailman.core.runner instantiates for each queue runner with a subclass
whose `files` checks the gate before it hands out each entry.  Only a
Runner creates that switchboard, so only runner processes are gated and
keep a runner record; the global switchboards Mailman uses to enqueue (and
the REST API to list queues) stay as they are.

Nothing here raises into Mailman: an exception inside a dequeue would
preserve the entry in `bad`.  Any error inside a check counts as "not
admitted" (closed).
"""

import logging
import os
import time

from mailman.config import config
from mailman.config.config import external_configuration

from mailman_mmsidecar import gate as gatelib
from mailman_mmsidecar import runners

PLUGIN_VERSION = '1'
# The sidecar's default state directory, under Mailman's queue_dir.
DEFAULT_STATE_DIR = '.mmsidecar'
# How old, at most, the view of the record file a check uses may be, in
# seconds: a stat costs up to a fifth of a 4 KiB dequeue (docs/gate.md,
# "Cost"); the deadline is compared with the clock at every check.
RECHECK = 0.002
# The section and option of the plugin's `configuration:` file.
CONFIG_SECTION = 'mmsidecar'
CONFIG_STATE_DIR = 'state_dir'

plog = logging.getLogger('mailman.plugins')
rlog = logging.getLogger('mailman.runner')


class GatedFiles:
    """What a gated switchboard's `files` returns: Mailman's own FIFO
    listing, handed out one entry at a time, each only once the gate
    admits it, at the moment the runner asks for it (so right before its
    dequeue).  len() is the number handed out so far: the runner's pass
    returns it, and a pass that dequeued nothing makes the runner sleep
    its sleep_time before it lists again."""

    def __init__(self, bases, admit):
        self._bases = bases
        self._admit = admit
        self._handed_out = 0

    def __iter__(self):
        for base in self._bases:
            if self._admit(base):
                self._handed_out += 1
                yield base

    def __len__(self):
        return self._handed_out


class RunnerGate:
    """The gate as one queue runner uses it: the check, the log of each
    change of the gate's state (once, with its reason), and the runner
    record that lets the sidecar count this runner."""

    def __init__(self, queue, spec, gate=None, problem=None):
        self.queue = queue
        self.spec = spec
        self.gate = gate
        self.problem = problem
        self.record = None
        self._state = None

    @classmethod
    def start(cls, queue, spec, state_dir, problem):
        """Open the gate of state_dir for this runner and register the
        runner; never raises (a failure leaves the gate closed)."""
        if problem is not None:
            plog.error('mmsidecar gate: %s; runner %s dequeues nothing',
                       problem, spec)
            return cls(queue, spec, problem=problem)
        try:
            self = cls(queue, spec)
            self.gate = gatelib.Gate(
                os.path.join(state_dir, 'gate.json'), boot_id=_boot_id(),
                on_change=self._log_state, recheck=RECHECK)
        except Exception as error:
            plog.exception('mmsidecar gate: cannot set up runner %s', spec)
            return cls(queue, spec, problem='set-up failed: {}'.format(error))
        try:
            self.record = runners.register(
                os.path.join(state_dir, 'runners'),
                dict(pid=os.getpid(), runner=spec, queue=queue,
                     started=time.time(), boot_id=self.gate.boot_id,
                     plugin=PLUGIN_VERSION))
        except Exception:
            plog.exception(
                'mmsidecar gate: runner %s honours the gate but could not '
                'write its runner record in %s: the sidecar will not count '
                'it', spec, os.path.join(state_dir, 'runners'))
        plog.info('mmsidecar gate: runner %s honours %s (runner record %s)',
                  spec, self.gate.path,
                  self.record.name if self.record else 'none')
        return self

    def _log_state(self, state):
        if state != self._state:
            self._state = state
            rlog.info('mmsidecar gate, runner %s: %s', self.spec, state)

    def admit(self, base):
        """Whether the runner may dequeue base now; never raises."""
        try:
            if self.gate is None:
                self._log_state('closed ({})'.format(self.problem))
                return False
            return self.gate.check(self.queue, base)[0]
        except Exception:
            return False

    def files(self, list_files):
        """The gated sequence of the queue's entries, listed by
        list_files() (Mailman's get_files); also notes the gate's state
        once per pass, so an idle runner logs a change too.  A gate closed
        to every entry costs no listing: the pass hands out nothing."""
        closed = True
        try:
            if self.gate is not None:
                closed = self.gate.observe()
            else:
                self._log_state('closed ({})'.format(self.problem))
        except Exception:
            pass
        return GatedFiles(() if closed else list_files(), self.admit)


_BOOT_ID = None


def _boot_id():
    """This process's boot id, read once."""
    global _BOOT_ID
    if _BOOT_ID is None:
        _BOOT_ID = gatelib.read_boot_id()
    return _BOOT_ID


def gated_switchboard(base, state_dir, problem=None):
    """A subclass of Mailman's Switchboard class base whose `files` is
    gated by <state_dir>/gate.json and which registers its runner in
    <state_dir>/runners (problem: why there is no usable state_dir; the
    gate then stays closed)."""

    class GatedSwitchboard(base):
        _mmsidecar_base = base

        def __init__(self, name, queue_directory, *args, **kwargs):
            super().__init__(name, queue_directory, *args, **kwargs)
            slice_ = args[0] if args else kwargs.get('slice')
            numslices = args[1] if len(args) > 1 else kwargs.get(
                'numslices', 1)
            spec = '{}:{}:{}'.format(
                name, 0 if slice_ is None else slice_, numslices)
            self._mmsidecar = RunnerGate.start(name, spec, state_dir, problem)

        @property
        def files(self):
            return self._mmsidecar.files(self.get_files)

    return GatedSwitchboard


def state_dir_for(plugin_name):
    """(state_dir, problem): the sidecar's state directory, from the
    plugin section's `configuration:` file ([mmsidecar] state_dir) or
    <queue_dir>/.mmsidecar; problem says why there is none."""
    section = getattr(config, 'plugin.' + plugin_name, None)
    path = section['configuration'].strip() if section is not None else ''
    default = os.path.join(config.QUEUE_DIR, DEFAULT_STATE_DIR)
    if not path:
        return default, None
    try:
        parser = external_configuration(path)
    except Exception as error:
        return None, 'cannot read configuration {}: {}'.format(path, error)
    value = parser.get(CONFIG_SECTION, CONFIG_STATE_DIR, fallback='').strip()
    if not value:
        return default, None
    if not os.path.isabs(value):
        return None, 'state_dir {!r} in {} is not absolute'.format(
            value, path)
    return value, None


def install(plugin_name):
    """Make every runner this process creates use a gated switchboard.
    Idempotent; never raises."""
    try:
        import mailman.core.runner as runner_module
        base = runner_module.Switchboard
        base = getattr(base, '_mmsidecar_base', base)
        state_dir, problem = state_dir_for(plugin_name)
        runner_module.Switchboard = gated_switchboard(
            base, state_dir, problem)
        plog.debug('mmsidecar gate installed: state dir %s', state_dir)
    except Exception:
        plog.exception('mmsidecar gate: cannot install; runners will not '
                       'honour the gate and will keep no runner record')
