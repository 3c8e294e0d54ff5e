#!/usr/bin/env bash
# Multi-node DDP training with torchrun (no scheduler): run this once on every node, from the repository root.
#
#   # node 0 (its address is MASTER_ADDR)          # node 1
#   NODE_RANK=0 MASTER_ADDR=10.0.0.1 \              NODE_RANK=1 MASTER_ADDR=10.0.0.1 \
#     configs/cluster/torchrun_ddp.sh                  configs/cluster/torchrun_ddp.sh
#
# Environment (defaults in brackets): NNODES [2], NPROC_PER_NODE [4, one process per GPU], NODE_RANK (0 ..
# NNODES-1, required), MASTER_ADDR (node 0's address, required), MASTER_PORT [29500]. Extra arguments go to
# `medmtl fit`. torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and GROUP_RANK for each process, and Lightning's
# TorchElasticEnvironment reads them; trainer.num_nodes and trainer.devices are set from NNODES and
# NPROC_PER_NODE here, so that their product matches the world size.
set -euo pipefail

NNODES="${NNODES:-2}"
NPROC_PER_NODE="${NPROC_PER_NODE:-4}"
NODE_RANK="${NODE_RANK:?set NODE_RANK: 0 on the master node, 1 .. NNODES-1 on the others}"
MASTER_ADDR="${MASTER_ADDR:?set MASTER_ADDR: an address of node 0 that every node can reach}"
MASTER_PORT="${MASTER_PORT:-29500}"
# Each process computes on its GPU; its CPU threads only feed it, beside data.num_workers loader processes.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

exec torchrun \
  --nnodes "$NNODES" \
  --nproc_per_node "$NPROC_PER_NODE" \
  --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" \
  --master_port "$MASTER_PORT" \
  -m medmtl.cli fit \
  -c configs/recon_seg_mni.yaml \
  -c configs/cluster/ddp.yaml \
  --trainer.num_nodes "$NNODES" \
  --trainer.devices "$NPROC_PER_NODE" \
  "$@"
