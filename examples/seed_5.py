# Seed example 5. Using ThreadPoolExecutor and Future Objects
# The only change from the original: concurrent.futures.ThreadPoolExecutor(max_workers=3)
# became zeropool's executor (plus `import zeropool`).
import concurrent.futures
import zeropool
import time

def worker(number):
    """Worker function that takes an integer and returns its square."""
    print(f"Worker {number} starting")
    time.sleep(number)
    result = number * number
    print(f"Worker {number} finished, result: {result}")
    return result

def main():
    with zeropool.Executor(max_workers=3) as executor:
        # Submit tasks to the executor
        future_list = [executor.submit(worker, i) for i in range(10)]
        
        # Process results
        for future in concurrent.futures.as_completed(future_list):
            try:
                result = future.result()
            except Exception as exc:
                print(f"Worker finished with an exception: {exc}")
            else:
                print(f"Worker completed with result: {result}")

if __name__ == "__main__":
    main()
