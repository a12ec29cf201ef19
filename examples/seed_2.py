# Seed example 2. Using ProcessPoolExecutor
# The only change from the original: concurrent.futures.ProcessPoolExecutor(max_workers=3)
# became zeropool's executor (plus `import zeropool`).
import concurrent.futures
import zeropool
import time

def worker(number):
    """Worker function that takes an integer and returns its square."""
    print(f"Worker {number} starting")
    result = number * number
    print(f"Worker {number} finished, result: {result}")
    return result

def main():
    with zeropool.Executor(max_workers=3) as executor:
        # Submit tasks to the executor
        future_to_number = {executor.submit(worker, i): i for i in range(10)}
        
        # Process results
        for future in concurrent.futures.as_completed(future_to_number):
            number = future_to_number[future]
            try:
                result = future.result()
            except Exception as exc:
                print(f"Worker {number} generated an exception: {exc}")
            else:
                print(f"Worker {number} completed with result: {result}")

if __name__ == "__main__":
    main()
