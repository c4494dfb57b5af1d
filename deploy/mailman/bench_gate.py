#!/usr/bin/python3
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

"""What one gate check costs next to the dequeue it guards.

    /usr/bin/python3 deploy/mailman/bench_gate.py [-n ENTRIES] [-r ROUNDS]

On a temporary queue directory, with Mailman's own Switchboard and the
plugin's gated sequence, it measures (median of the rounds):
  - dequeue: Switchboard.dequeue of a 4 KiB entry (open, rename to .bak,
    two unpickles), the files still in the page cache;
  - check, stat: one check that stats the record file (unchanged):
    handing the entry out through the gated sequence, the stat, the
    clock, the rule;
  - check, no stat: the same with the view of the record reused;
  - check, record changed: one check that finds the record replaced
    (open, fstat, read, decode, the rule);
  - the plugin as shipped in a runner's backlog loop (a dequeue between
    checks): the share of checks that stat (at most one per plugin.RECHECK),
    and so the average check (the same entries, dequeued and finished);
and prints each check's share of the dequeue.  The target is at most 5 %.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mailman.core.switchboard import Switchboard  # noqa: E402
from mailman.email.message import Message  # noqa: E402
from mailman_mmsidecar import gate as gatelib  # noqa: E402
from mailman_mmsidecar import plugin  # noqa: E402


def gate_record(deadline_in=3600.0, epoch=3):
    now = time.time()
    return json.dumps({
        'v': 1, 'node': 'bench', 'epoch': epoch,
        'boot_id': gatelib.read_boot_id(),
        'deadline': gatelib.boottime() + deadline_in, 'admit': 'all',
        'since': now, 'cutoff': now, 'slew': 1, 'reason': 'live',
        'deny': [], 'written': now}).encode()


def write_atomic(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as fp:
        fp.write(data)
    os.rename(tmp, path)


def per_item_ns(fn, n):
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / n


def per_check_us(runner_gate, bases):
    """Microseconds per entry the gated sequence adds to a plain loop."""
    def gated():
        for _ in runner_gate.files(lambda: bases):
            pass

    def plain():
        for _ in list(bases):
            pass
    return (per_item_ns(gated, len(bases)) - per_item_ns(plain, len(bases))
            ) / 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('-n', type=int, default=2000, help='entries per round')
    ap.add_argument('-r', type=int, default=7, help='rounds')
    args = ap.parse_args()
    n = args.n

    with tempfile.TemporaryDirectory(prefix='mmsidecar-bench-') as root:
        queue = os.path.join(root, 'queue')
        state = os.path.join(queue, '.mmsidecar')
        os.makedirs(state)
        write_atomic(os.path.join(state, 'gate.json'), gate_record())
        sb = Switchboard('in', os.path.join(queue, 'in'))
        runner_gate = plugin.RunnerGate.start('in', 'in:0:1', state, None)
        gate = runner_gate.gate
        reader = gate.reader
        reads = [0]
        real_read = reader.read

        def counted_read():
            reads[0] += 1
            return real_read()
        reader.read = counted_read

        msg = Message()
        msg['From'] = 'someone@example.com'
        msg['To'] = 'list@example.com'
        msg['Subject'] = 'benchmark'
        msg['Message-ID'] = '<bench@example.com>'
        msg.set_payload('x' * (4096 - len(msg.as_string())))

        fig = {k: [] for k in ('dequeue', 'stat', 'nostat', 'changed',
                               'share')}
        for _ in range(args.r):
            bases = [sb.enqueue(msg, listid='list.example.com')
                     for _ in range(n)]
            size = os.path.getsize(
                os.path.join(sb.queue_directory, bases[0] + '.pck'))

            gate.recheck = 0.0
            fig['stat'].append(per_check_us(runner_gate, bases))
            gate.recheck = 3600.0
            fig['nostat'].append(per_check_us(runner_gate, bases))

            gate.recheck = 0.0

            def reread():
                for base in bases:
                    reader._key = None      # as if the record had changed
                    runner_gate.admit(base)
            fig['changed'].append(per_item_ns(reread, n) / 1000)

            def dequeue_all():
                for base in bases:
                    sb.dequeue(base)
            fig['dequeue'].append(per_item_ns(dequeue_all, n) / 1000)
            for base in bases:
                sb.finish(base)

            # The plugin as shipped, in a backlog: a dequeue after each
            # check.
            bases = [sb.enqueue(msg, listid='list.example.com')
                     for _ in range(n)]
            gate.recheck = plugin.RECHECK
            reads[0] = 0
            for base in runner_gate.files(lambda: bases):
                sb.dequeue(base)
                sb.finish(base)
            fig['share'].append(reads[0] / n)

        med = {k: statistics.median(v) for k, v in fig.items()}
        d = med['dequeue']
        shipped = med['nostat'] + med['share'] * (med['stat'] - med['nostat'])
        print('entries per round: {}, rounds: {}, entry size: {} bytes'.format(
            n, args.r, size))
        print('dequeue of a 4 KiB entry:          {:7.2f} us'.format(d))
        for label, us in [('check, stat', med['stat']),
                          ('check, no stat', med['nostat']),
                          ('check, record changed', med['changed'])]:
            print('{:34s} {:7.2f} us  {:5.1f} % of the dequeue'.format(
                label + ':', us, 100 * us / d))
        print('plugin as shipped, in a backlog:   {:7.2f} us  {:5.1f} % of '
              'the dequeue ({:.1f} % of its checks stat; target: at most '
              '5 %)'.format(shipped, 100 * shipped / d, 100 * med['share']))


if __name__ == '__main__':
    main()
