// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

// A small factory + pair pair for decoded-event tests and the demo: the factory creates
// pairs (PairCreated carries the child's address); a pair only records what a swap or a
// route would move, as events (no balances): enough to exercise ABI decoding.
contract Pair {
    address public immutable factory;
    address public immutable token0;
    address public immutable token1;

    event Swap(
        address indexed sender,
        uint256 amount0In,
        uint256 amount1In,
        uint256 amount0Out,
        uint256 amount1Out,
        address indexed to
    );
    struct Leg {
        address pool;
        uint256 amount;
    }
    event Route(address indexed sender, uint256[] amounts, Leg[] legs, bytes memo, string note);

    constructor(address a, address b) {
        factory = msg.sender;
        token0 = a;
        token1 = b;
    }

    function swap(uint256 a0In, uint256 a1In, uint256 a0Out, uint256 a1Out, address to) external {
        emit Swap(msg.sender, a0In, a1In, a0Out, a1Out, to);
    }

    // Many swaps in one transaction (benchmarks): amounts vary, one is wider than 64 bits.
    function swapMany(uint256 n, address to) external {
        for (uint256 i = 0; i < n; i++) {
            emit Swap(msg.sender, i, i * 2, i * 3 + 2 ** 100, i + 1, to);
        }
    }

    function route(uint256[] calldata amounts, Leg[] calldata legs, bytes calldata memo, string calldata note)
        external
    {
        emit Route(msg.sender, amounts, legs, memo, note);
    }
}

contract Factory {
    address[] public allPairs;

    event PairCreated(address indexed token0, address indexed token1, address pair, uint256 index);

    function createPair(address a, address b) external returns (address pair) {
        pair = address(new Pair(a, b));
        allPairs.push(pair);
        emit PairCreated(a, b, pair, allPairs.length);
    }

    // Creates a pair and swaps on it in the same transaction (a child used in its own block).
    function createAndSwap(address a, address b, uint256 amount) external returns (address pair) {
        pair = address(new Pair(a, b));
        allPairs.push(pair);
        emit PairCreated(a, b, pair, allPairs.length);
        Pair(pair).swap(amount, 0, 0, amount / 2, msg.sender);
    }
}
